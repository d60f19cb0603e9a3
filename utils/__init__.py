"""Small single-purpose helpers shared by train, val, export and detect."""
