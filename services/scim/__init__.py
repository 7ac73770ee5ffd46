"""The SCIM 2.0 client: how scimflow talks to a target application's ``/Users``, ``/Groups``,
``/Bulk`` and discovery endpoints, and nothing about who calls it.

The writer and the admin API's test connection import it; it imports only ``services.runtime``
(settings, config types, errors, metrics, the shared HTTP helpers), never a service.

- :mod:`.client` the verbs (find, get, create, update, patch, delete, members, documents);
  they build what they send;
- :mod:`._transport` one HTTP exchange: quarantine gate, rate-limit slot, credentials,
  retries; it sends what it is given;
- :mod:`.errors` the one HTTP status -> scimflow error table;
- :mod:`.auth` bearer tokens and OAuth2 client credentials;
- :mod:`.ratelimit` adaptive rate limits; :mod:`.quarantine` the failing-app gate;
- :mod:`.paths` SCIM attribute paths, filters and PATCH/PUT bodies (pure);
- :mod:`.capabilities` what a target declares (``/ServiceProviderConfig``, ``/ResourceTypes``,
  ``/Schemas``) and the mappings checked against it.
"""
