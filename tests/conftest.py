"""Shared test setup: the repository root on sys.path (never scripts/, whose asag.py would
shadow the package, as in the WebUI where scripts/ is not on the path either)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
