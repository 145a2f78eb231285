"""Ground-truth feedback: `POST /v1/feedback`, the prediction store (SQLite or Redis) and live quality metrics.

`sidecar.feedback.api.FeedbackService` is the entry point; see its module for the flow of a request.
"""
