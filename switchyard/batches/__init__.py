"""Batch jobs: OpenAI's Batch API over Switchyard's own workers. A batch's input file is validated, its lines
released as ordinary tasks a window at a time, and its output and error files written when every line has
ended; `engine.py` advances a batch, `service.py` holds the API's use cases."""
