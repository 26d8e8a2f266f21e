-- Every purchase of a known customer: webshop orders and shop-till transactions together,
-- up to the end of the run date. A negative amount is a refund, not a purchase: it is in
-- `refunds`, so that a returned item never counts as a visit or lowers an order value.
SELECT customer_id, 'web' AS channel, order_ts AS ts, CAST(amount_eur AS DECIMAL(18, 2)) AS amount_eur, category
FROM orders
WHERE customer_id IS NOT NULL AND COALESCE(amount_eur >= 0, true) AND order_ts < TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day'
UNION ALL
SELECT customer_id, 'store' AS channel, ts, CAST(amount_eur AS DECIMAL(18, 2)) AS amount_eur, CAST(NULL AS VARCHAR) AS category
FROM pos_transactions
WHERE customer_id IS NOT NULL AND COALESCE(amount_eur >= 0, true) AND ts < TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day'
