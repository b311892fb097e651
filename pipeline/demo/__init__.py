"""The bundled Common-Crawl-like sample that `make demo` and the tests run on."""
