-- The ledger is read by day (usage reports) and by month (the budget's spend, at start and after a
-- restore), and a month is a range of days ('YYYY-MM-01' to 'YYYY-MM-31'): one index on `day`
-- serves both, so each ledger row written (one per provider call) updates one index fewer.
DROP INDEX ledger_by_month;
