-- Nothing looks a delivery up by Okta's eventId (the ledger is read newest first, by id), and
-- this index took a random page write per delivery on the hook's hot path.
DROP INDEX deliveries_delivery_id
