-- Several recipients (issue: message features): when the server refuses
-- some recipients for good and accepts the others, the message goes to
-- the accepted ones and the refusals are recorded on the job.
--
-- refused_recipients: [{"recipient": ..., "reply": ...}], NULL when none
--                     was refused. Personal data: retention clears it with
--                     the task and the server's reply.
ALTER TABLE deliveries ADD COLUMN refused_recipients JSONB;
