"""Report: figures, the HTML report and Table 1."""
