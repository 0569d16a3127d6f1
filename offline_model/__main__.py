"""`python -m offline_model [--host H] [--port N]`."""

from offline_model.server import main

main()
