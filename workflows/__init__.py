"""The pipeline: stage functions (``stages``) served as a workflow and as the ``pipeline`` model."""
