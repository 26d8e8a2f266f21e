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
),
-- The quintiles come from row numbers: `ntile()` needs its partition's size, so the engine
-- holds every row at once (at 10M people one 670 MB batch that the next sort could not take
-- in a 2 GB pool), where row numbers stream out of a sort that spills. NTILE's own rule:
-- with n rows, the first n % 5 quintiles hold one row more.
buyers AS (SELECT count(*) AS n FROM per_customer),
ranked AS (
    SELECT p.*,
           n / 5 AS size,
           n % 5 * (n / 5 + 1) AS in_larger,
           n % 5 AS larger,
           CAST(row_number() OVER (ORDER BY last_purchase_at ASC, customer_id) AS BIGINT) - 1 AS r_rank,
           CAST(row_number() OVER (ORDER BY frequency ASC, customer_id) AS BIGINT) - 1 AS f_rank,
           CAST(row_number() OVER (ORDER BY monetary_eur ASC, customer_id) AS BIGINT) - 1 AS m_rank
    FROM per_customer p CROSS JOIN buyers
)
SELECT customer_id,
       first_purchase_at,
       last_purchase_at,
       CAST(floor((to_unixtime(TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day') - to_unixtime(last_purchase_at)) / 86400) AS BIGINT) AS recency_days,
       frequency,
       CAST(monetary_eur AS DECIMAL(18, 2)) AS monetary_eur,
       CAST(CASE WHEN r_rank < in_larger THEN r_rank / (size + 1) ELSE larger + (r_rank - in_larger) / size END + 1 AS INT) AS r_score,
       CAST(CASE WHEN f_rank < in_larger THEN f_rank / (size + 1) ELSE larger + (f_rank - in_larger) / size END + 1 AS INT) AS f_score,
       CAST(CASE WHEN m_rank < in_larger THEN m_rank / (size + 1) ELSE larger + (m_rank - in_larger) / size END + 1 AS INT) AS m_score
FROM ranked
