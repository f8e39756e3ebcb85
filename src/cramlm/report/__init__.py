"""Reports over run dirs: plots (matplotlib, headless) and a self-contained HTML page or markdown summary."""
