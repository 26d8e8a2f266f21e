-- Recency, frequency and monetary value over web and store purchases, each scored 1-5 by
-- quintile (5 = most recent, most frequent, highest spend). Ties break on customer_id so
-- that a re-run gives the same scores.
WITH per_customer AS (
    SELECT customer_id,
           min(ts) AS first_purchase_at,
           max(ts) AS last_purchase_at,
           count(*) AS frequency,
           sum(amount_eur) AS monetary_eur
    FROM purchases
    GROUP BY customer_id
)
SELECT customer_id,
       first_purchase_at,
       last_purchase_at,
       CAST(floor((to_unixtime(TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day') - to_unixtime(last_purchase_at)) / 86400) AS BIGINT) AS recency_days,
       frequency,
       CAST(monetary_eur AS DECIMAL(18, 2)) AS monetary_eur,
       CAST(ntile(5) OVER (ORDER BY last_purchase_at ASC, customer_id) AS INT) AS r_score,
       CAST(ntile(5) OVER (ORDER BY frequency ASC, customer_id) AS INT) AS f_score,
       CAST(ntile(5) OVER (ORDER BY monetary_eur ASC, customer_id) AS INT) AS m_score
FROM per_customer
