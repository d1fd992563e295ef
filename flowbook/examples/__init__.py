"""The flows of Metaflow's introductory documents, with only the import changed.

Run one with ``flowbook run <this folder>/helloworld.py`` or ``python helloworld.py run``.
"""
