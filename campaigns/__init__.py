"""Campaigns as product objects: segments, campaigns with approval, copy experiments, execution.

`segments` (saved audiences in the eligibility rule language), `store` (SQLite in the home), `lifecycle`
(the approval state machine, pure), `experiments` (sequential tests and Thompson sampling, pure NumPy),
`execution` (batches through the decision engine of `/decide`).
"""
