"""What makes a plug-in "done": reference models to test backends and passes on (conformance kits follow)."""
