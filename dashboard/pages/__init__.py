"""One module (or one folder, where a page has add-on sections) per page; component ids are prefixed by
the page."""
