"""IO processor plugins that ship with cenote (see :mod:`cenote.engine.io_processor`)."""
