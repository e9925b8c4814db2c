"""Stand-in of the WebUI's ``modules/shared.py`` (A1111 v1.10.1; Forge Classic and Neo the same
here): the one ``opts`` that every module reads, ``OptionInfo`` as extensions reach it, and the
settings file that "Apply settings" writes. The harness fills them before the page is built."""
from modules.options import OptionInfo, Options  # noqa: F401

opts = Options({}, set())
config_filename = None  # set by the harness: a file in a temporary folder
