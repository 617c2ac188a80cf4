"""Work in its own process: a task under time and memory limits (`isolate`, the job runner of the app,
`studio convert` and `studio batch`), one job protocol for a job of this machine or of a Ray cluster and the
factory that picks between them (`protocol`: what the web app holds), batch manifests read as data
(`manifest`), the batch driver and its local runner (`fleet`), its Ray runner and the app's jobs on Ray
(`ray_fleet`), what both runners do with an entry (`entries`: hash, state file, rows, the isolated run), the
batch's progress on stderr (`progress`), the job limits' defaults and errors (`limits`). `_watchdog` kills
an orphaned job; `_ray_files` moves a job's files through Ray.

Imports go one way: `fleet` uses `entries`, `progress` and (for --ray) `ray_fleet`; `ray_fleet` uses `entries`,
`progress` and `isolate`, never `fleet`.
"""

__all__ = ["entries", "fleet", "isolate", "limits", "manifest", "progress", "protocol", "ray_fleet"]
