"""The servers app's API faces, one package each (the same layout as `generations/api/`)."""
