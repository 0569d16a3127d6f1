"""The tool executor: consumes approved calls from the job stream and stores their outcomes."""
