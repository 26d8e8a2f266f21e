-- Refunds per customer: negative amounts on webshop orders and shop-till transactions, up
-- to the end of the run date. A refund can belong to a purchase made before the dumps'
-- history starts, so a customer's refunds may exceed the purchases seen.
WITH refunded AS (
    SELECT customer_id, order_ts AS ts, -CAST(amount_eur AS DECIMAL(18, 2)) AS refund_eur
    FROM orders
    WHERE customer_id IS NOT NULL AND amount_eur < 0 AND order_ts < TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day'
    UNION ALL
    SELECT customer_id, ts, -CAST(amount_eur AS DECIMAL(18, 2))
    FROM pos_transactions
    WHERE customer_id IS NOT NULL AND amount_eur < 0 AND ts < TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day'
)
SELECT customer_id,
       count(*) AS refunds,
       CAST(sum(refund_eur) AS DECIMAL(18, 2)) AS refunds_eur,
       max(ts) AS last_refund_at
FROM refunded
GROUP BY customer_id
