"""Host adapters: the only part of ``asag`` that knows the WebUI, Forge or reForge exist.

Everything outside this package imports only torch and the standard library.
"""


class NotApplicable(Exception):
    """ASAG cannot apply to this generation (no UNet, no matching layer, unsupported model).

    The message is user-facing: it goes to the console and to the infotext's ``ASAG note``, and the
    image is left exactly as with ASAG off.
    """
