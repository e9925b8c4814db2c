"""Stand-in of Forge Neo 2.26's ``webui/modules/sd_models.py`` (exo101/sd-webui-forge-neo-v3
5692d2d), as far as the page's checkpoint selector and the loaded model go:

- ``CheckpointInfo(filename)`` registers itself in ``checkpoints_list`` under its title (the file
  name; Neo adds `` [hash]`` once the hash is known) and in ``checkpoint_aliases`` under its ids;
- ``get_closet_checkpoint_match(search)`` finds a checkpoint by alias, else the shortest title
  containing ``search`` (with or without a `` [hash]``), else None;
- ``model_data.sd_model`` is the loaded model, a ``FakeInitialModel`` until the first
  generation loads one (``forge_model_reload``, which also sets the model's
  ``sd_checkpoint_info``); reading it never loads a model.
"""
import os
import re

checkpoints_list = {}
checkpoint_aliases = {}
re_strip_checksum = re.compile(r"\s*\[[^]]+]\s*$")


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        self.name = os.path.basename(filename)
        self.name_for_extra = os.path.splitext(self.name)[0]
        self.model_name = os.path.splitext(self.name.replace("/", "_").replace("\\", "_"))[0]
        self.hash = None
        self.shorthash = None
        self.title = self.name if self.shorthash is None else f"{self.name} [{self.shorthash}]"
        self.ids = [self.model_name, self.title, self.name, self.name_for_extra]

    def register(self):
        checkpoints_list[self.title] = self
        for id in self.ids:
            checkpoint_aliases[id] = self


def get_closet_checkpoint_match(search_string):
    if not search_string:
        return None

    checkpoint_info = checkpoint_aliases.get(search_string, None)
    if checkpoint_info is not None:
        return checkpoint_info

    found = sorted([info for info in checkpoints_list.values() if search_string in info.title], key=lambda x: len(x.title))
    if found:
        return found[0]

    search_string_without_checksum = re.sub(re_strip_checksum, "", search_string)
    found = sorted([info for info in checkpoints_list.values() if search_string_without_checksum in info.title], key=lambda x: len(x.title))
    if found:
        return found[0]

    return None


class FakeInitialModel:
    """a dummy class for compatibility when no model is loaded yet"""


class SdModelData:
    def __init__(self):
        self.sd_model = FakeInitialModel()
        self.forge_loading_parameters = {}
        self.forge_hash = ""


model_data = SdModelData()
