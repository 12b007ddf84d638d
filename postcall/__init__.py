"""What happens after a call ends: summary, memory sync and delivery of the record by signed webhook.

`postcall.processor.PostCallProcessor.process` is the one coroutine the worker schedules once the session
has closed; `postcall.outbox.OutboxDelivery` delivers the finished records, surviving restarts.
"""
