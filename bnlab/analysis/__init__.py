"""Analysis: runs read back through records, turned into statistics, claim verdicts, reports and
findings. Reads suites and records only; never trains and never imports the runs wing.

Add a claim rule in rules.py (register it in RULES), a report section in report.py.
"""
