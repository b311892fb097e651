"""The bundled configs: stage graphs, rewrite prompts and block-lists; a package so they ship in the wheel."""
