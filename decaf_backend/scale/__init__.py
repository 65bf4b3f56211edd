"""Scale-out on Ray: a generic runner of actors that load the models once (runner.py) and the `prelabel` command
that pre-labels a whole Label Studio project with it (prelabel.py). Sits above the core and the backend."""
