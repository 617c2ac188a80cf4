"""Work in its own process: a task under time and memory limits (`isolate`, the job runner of the app,
`studio convert` and `studio batch`), batch manifests read as data (`manifest`), the batch driver (`fleet`) and
its Ray runner (`ray_fleet`), the job limits' defaults and errors (`limits`). `_watchdog` kills an orphaned job; `_ray_files` moves a job"s files through Ray.
"""

__all__ = ["fleet", "isolate", "limits", "manifest", "ray_fleet"]
