"""kd's tests. A regular package, so `tests.conftest` is this folder even where a dependency (baycomp
1.0.3) installs a top-level `tests` package into site-packages."""
