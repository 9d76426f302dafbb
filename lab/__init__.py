"""The lab's app side: what a browser session keeps and shows; all learning happens in `metacore`.

Modules: `task` (the session's classes, images, uploads and limits), `examples` (example tasks and the data root),
`models` (the picker's models, loaded once and shared), `runs` (adaptation runs, step by step), `memo` (values
kept while their inputs stay the same), `sidebar`, `charts`, `canvas`, `live_training` (meta-training runs off the
page's thread), `live_camera` (the live camera and burst capture), `saved_tasks` (a task as one zip), `export`
(the adapted task, to run anywhere), `text` (words the pages share).
"""

# The pages' heavy libraries, imported once by app.py before any page: one session imports them while the others
# wait. Sessions whose first pages imported pandas at the same moment met a half-imported module.
import pandas  # noqa: F401
import plotly.express  # noqa: F401
import plotly.graph_objects  # noqa: F401
