"""What operators watch: metrics, traces and logs."""
