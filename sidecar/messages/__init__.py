"""Messages that cross process and package boundaries: capture records, analysis results, task messages."""
