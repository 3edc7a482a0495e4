# pipeline.yaml's models are split over config.py and modules it imports part-way through
# (config_sql_files, config_events, config_rest build on its SourceBase); loading config first
# keeps that cycle harmless whichever of them a caller imports first.
from tasks.core import config as _config  # noqa: F401
