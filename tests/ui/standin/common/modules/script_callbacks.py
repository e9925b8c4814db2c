"""Stand-in of the WebUI's ``modules/script_callbacks.py`` (A1111 v1.10.1, commit 82a973c0; Forge
Neo 2.26 the same here), as far as a component callback goes: ``on_after_component(callback)``
registers a function that ``after_component_callback(component, **kwargs)`` calls, in
registration order, after each component is made (with the component's constructor keywords); an
exception in one is reported and the others still run (``report_exception``)."""
import logging

log = logging.getLogger("standin.script_callbacks")
callbacks_after_component = []


def on_after_component(callback, *, name=None):
    callbacks_after_component.append(callback)


def after_component_callback(component, **kwargs):
    for callback in list(callbacks_after_component):
        try:
            callback(component, **kwargs)
        except Exception:
            log.exception("error in after_component callback %s", callback)
