"""What a person reads: the batch summary, report data, HTML and Markdown pages, the terminal."""
