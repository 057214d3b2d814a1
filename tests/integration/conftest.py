"""The session's real TorchServe (fixtures `model_store` and `server`) lives in tests/conftest.py,
shared with tests/robustness so a full run starts one server."""
