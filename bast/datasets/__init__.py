"""Sound corpora (recipes). Not built yet: see issue 3."""
