"""Load shedding: the leading worker measures the queues, API processes refuse submissions when they back up."""
