"""Registry events: recorded in a journal in storage, delivered to webhooks off the request path.

model.py      the event (Distribution's fields, free of HTTP frameworks)
filters.py    which endpoints want which events
recorder.py   what the registry layer calls (registry/notify.py builds the events): keeps
              what some endpoint wants, journals it
journal.py    the journal in storage: group-committed batches, read back in order
claims.py     one replica delivers to an endpoint at a time (conditional create, expiring)
formats.py    request bodies: Distribution's envelope, CloudEvents 1.0
signing.py    the Berth-Signature header (HMAC-SHA256)
sender.py     one POST of one event: headers, signature, TLS, timeout
delivery.py   one endpoint's delivery loop: progress, retries, dead letters, bounded queue
service.py    starts and stops the delivery loops of a process
admin.py      pending events and dead letters, replay (``berth events``, command.py)
"""
