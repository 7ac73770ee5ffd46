"""Browser tests of the web console (headless Chromium driven by Selenium)."""
