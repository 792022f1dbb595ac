-- Held webhook deliveries by endpoint. An event written while its endpoint
-- was failing is fanned out `held`; a resume that commits between that
-- read and the event's commit cannot see the new row, which would then stay
-- held on an endpoint that is no longer failing. Dispatchers release such
-- rows now and then (Store::release_stray_held_webhooks), through this
-- index, so the sweep reads held rows only.
CREATE INDEX webhook_deliveries_held ON webhook_deliveries (endpoint_id)
    WHERE state = 'held';
