-- Customer lifetime value. Historical: what the customer spent, less refunds (it can be
-- negative when refunds concern purchases from before the dumps' history). Predicted: the
-- three factors of CLV (revenue, cost, duration of the relationship) as
--   average order value x purchases per year x margin x discounted expected lifetime,
-- where the expected lifetime follows from the yearly retention rate r of all customers
-- (the share of last year's buyers who bought again this year) and the discount rate d:
--   sum over years t >= 1 of (r / (1 + d))^t = q / (1 - q) with q = r / (1 + d).
-- Purchases per year use the customer's tenure (at least 90 days, so that a new
-- customer's first week does not extrapolate to a year).
WITH buyers AS (
    SELECT customer_id,
           bool_or(ts >= TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day' - INTERVAL '365 days') AS bought_this_year,
           bool_or(ts >= TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day' - INTERVAL '730 days'
                   AND ts < TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day' - INTERVAL '365 days') AS bought_last_year
    FROM purchases
    GROUP BY customer_id
),
retention AS (
    SELECT COALESCE(
               CAST(sum(CASE WHEN bought_last_year AND bought_this_year THEN 1 ELSE 0 END) AS DOUBLE)
               / NULLIF(sum(CASE WHEN bought_last_year THEN 1 ELSE 0 END), 0),
               0.0) AS yearly_retention
    FROM buyers
),
factors AS (
    SELECT r.customer_id,
           r.monetary_eur,
           CAST(r.monetary_eur AS DOUBLE) / r.frequency AS average_order_value,
           r.frequency / (greatest((to_unixtime(TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day') - to_unixtime(r.first_purchase_at)) / 86400.0, 90.0) / 365.0) AS purchases_per_year,
           least(t.yearly_retention, 0.95) / (1.0 + ${clv_discount_rate:-0.10}) AS q
    -- retention is one row: the small side of the join.
    FROM retention t CROSS JOIN rfm r
)
SELECT f.customer_id,
       CAST(f.monetary_eur - COALESCE(x.refunds_eur, CAST(0 AS DECIMAL(18, 2))) AS DECIMAL(18, 2)) AS historical_revenue_eur,
       COALESCE(x.refunds_eur, CAST(0 AS DECIMAL(18, 2))) AS refunds_eur,
       CAST(average_order_value AS DECIMAL(18, 2)) AS average_order_value_eur,
       round(purchases_per_year, 3) AS purchases_per_year,
       round(q / (1.0 - q), 3) AS expected_lifetime_years,
       CAST(average_order_value * purchases_per_year * ${clv_margin:-0.30} * q / (1.0 - q) AS DECIMAL(18, 2)) AS predicted_clv_eur
FROM factors f
LEFT JOIN refunds x ON x.customer_id = f.customer_id
