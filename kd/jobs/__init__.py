"""`kd plan`: an experiment as data. A plan file (experiments/*.yaml) names corpora, seeds, teachers,
caches, models and tables; it expands into a graph of cells (a teacher of a seed, a cache, a model on
a corpus and seed), each with a deterministic identity, run through the library on Dask workers
(local processes by default, or a cluster), and reported table by table through `kd compare`.

Modules: `plan`, `plan_file`, `teacher_spec` and `names` (reading and checking the file; a teacher
is a BiLSTM MTM or a fine-tuned transformer), `cells` (the graph and identities),
`plan_data` (subsampled corpora, digests), `runner` (one cell on a worker), `plan_runs` (cell and plan runs),
`executor` (Dask), `driver` (resolving and running a plan, its status), `plan_report` (the tables),
`estimate` (what `kd plan show` prints)."""
