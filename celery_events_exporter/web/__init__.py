"""The HTTP side: the server and its routes, the JSON API, basic auth and TLS."""
