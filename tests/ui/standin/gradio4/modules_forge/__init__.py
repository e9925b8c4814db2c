"""Stand-in of Forge Neo's ``modules_forge`` package for the UI tests of Neo's page."""
