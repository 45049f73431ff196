"""Visual QC reports: per-subject and cohort HTML pages (self-contained) and their PNG figures."""
