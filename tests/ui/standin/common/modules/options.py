"""Stand-in of the WebUI's ``modules/options.py``: AUTOMATIC1111 stable-diffusion-webui v1.10.1
(commit 82a973c04367123ae98bd9abdf80d9eda9b910e2); the same in Forge Classic 5136ce20 and Forge
Neo 2.26 (``webui/modules/options.py``) as far as kept here. Written for these tests from a
reading of that file, keeping what the Settings tab does with an extension's options:

- ``OptionInfo`` keeps ``component`` (whatever makes the control: a class or any callable) and
  ``component_args`` (a dict, or a callable returning one) as given; ``info`` and
  ``needs_reload_ui`` append to ``comment_after``;
- ``Options.data`` holds a value for every registered option (its default until set); reading an
  option gives ``data``, else the default, else AttributeError; ``set`` stores a changed value and
  reports whether it changed; ``same_type`` compares types with int counted as float.

Left out: freezing and restricting settings, onchange callbacks' error handling, categories.
"""
import json


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None, refresh=None,
                 comment_before='', comment_after='', infotext=None, restrict_api=False, category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh
        self.do_not_save = False
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.infotext = infotext
        self.restrict_api = restrict_api

    def info(self, info):
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def needs_reload_ui(self):
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        return self


options_builtin_fields = {"data_labels", "data", "restricted_opts", "typemap"}


class Options:
    typemap = {int: float}

    def __init__(self, data_labels, restricted_opts):
        self.data_labels = data_labels
        self.data = {k: v.default for k, v in self.data_labels.items() if not v.do_not_save}
        self.restricted_opts = restricted_opts

    def __setattr__(self, key, value):
        if key in options_builtin_fields:
            return super().__setattr__(key, value)
        if self.data is not None and (key in self.data or key in self.data_labels):
            if self.data_labels.get(key).do_not_save:
                return
            self.data[key] = value
            return
        return super().__setattr__(key, value)

    def __getattr__(self, item):
        if item in options_builtin_fields:
            return super().__getattribute__(item)
        if self.data is not None and item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        return super().__getattribute__(item)

    def set(self, key, value, is_api=False, run_callbacks=True):
        oldval = self.data.get(key, None)
        if oldval == value:
            return False
        option = self.data_labels[key]
        if option.do_not_save:
            return False
        setattr(self, key, value)
        if run_callbacks and option.onchange is not None:
            option.onchange()
        return True

    def save(self, filename):
        with open(filename, "w", encoding="utf8") as file:
            json.dump(self.data, file, indent=4, ensure_ascii=False)

    def same_type(self, x, y):
        if x is None or y is None:
            return True
        type_x = self.typemap.get(type(x), type(x))
        type_y = self.typemap.get(type(y), type(y))
        return type_x == type_y

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default

    def dumpjson(self):
        return json.dumps({k: self.data.get(k, v.default) for k, v in self.data_labels.items()})
