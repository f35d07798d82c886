"""Monitoring as a product object: campaign reports from the logs, model and data health, the web dashboard.

`reports` (funnels, incremental results against hold-outs, ROI, send times, roll-ups: pure pandas), `sources` (the
logs, the contacts table, the campaign store and the operator config -> the frame reports read), `html` (the
report as one self-contained HTML page with inline SVG charts), `drift` (PSI, calibration, alerts),
`dashboard` (the local web dashboard, Starlette).
"""
