# Root conftest: pytest_plugins may only be declared here. The optcheck plugin itself is loaded
# through its pytest11 entry point (pip install -e .); pytester drives it in tests/.
pytest_plugins = ["pytester"]
