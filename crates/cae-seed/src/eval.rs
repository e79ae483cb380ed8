//! Measures for the autoencoder's other uses: k-means clustering (linfa), normalised mutual
//! information and clustering accuracy (Hungarian matching, pathfinding), and the area under
//! the ROC curve of an anomaly score.

use linfa::DatasetBase;
use linfa::traits::{Fit, Predict};
use linfa_clustering::KMeans;
use ndarray::Array2;

/// k-means (k-means++ initialisation, best of `runs` runs, fixed seed) of `points`, all of
/// the same length: the cluster of each point.
pub fn kmeans(points: &[Vec<f32>], k: usize, runs: usize) -> Result<Vec<usize>, String> {
    let dim = points.first().map_or(0, Vec::len);
    if points.len() < k || dim == 0 || points.iter().any(|p| p.len() != dim) {
        return Err(format!("{} points of dimension {dim} for k = {k}", points.len()));
    }
    let data = Array2::from_shape_vec((points.len(), dim), points.iter().flatten().map(|&v| v as f64).collect())
        .map_err(|e| e.to_string())?;
    let model = KMeans::params(k).n_runs(runs).max_n_iterations(300).fit(&DatasetBase::from(data.clone())).map_err(|e| e.to_string())?;
    Ok(model.predict(&data).to_vec())
}

/// Contingency counts of two labelings: `[a][b]`.
fn contingency(a: &[usize], b: &[usize]) -> Vec<Vec<u64>> {
    assert_eq!(a.len(), b.len(), "two labelings of the same points");
    let (na, nb) = (a.iter().max().map_or(0, |m| m + 1), b.iter().max().map_or(0, |m| m + 1));
    let mut t = vec![vec![0u64; nb]; na];
    for (&x, &y) in a.iter().zip(b) {
        t[x][y] += 1;
    }
    t
}

/// Normalised mutual information of two labelings, normalised by the arithmetic mean of the
/// two entropies (scikit-learn's default): 1 for identical partitions, 0 for independent ones.
pub fn nmi(a: &[usize], b: &[usize]) -> f64 {
    let t = contingency(a, b);
    let n = a.len() as f64;
    let rows: Vec<f64> = t.iter().map(|r| r.iter().sum::<u64>() as f64).collect();
    let cols: Vec<f64> = (0..t.first().map_or(0, Vec::len)).map(|j| t.iter().map(|r| r[j]).sum::<u64>() as f64).collect();
    let h = |m: &[f64]| -m.iter().filter(|&&c| c > 0.0).map(|&c| c / n * (c / n).ln()).sum::<f64>();
    let mut mi = 0.0;
    for (i, r) in t.iter().enumerate() {
        for (j, &c) in r.iter().enumerate() {
            if c > 0 {
                let c = c as f64;
                mi += c / n * (n * c / (rows[i] * cols[j])).ln();
            }
        }
    }
    let (ha, hb) = (h(&rows), h(&cols));
    if ha + hb == 0.0 { 1.0 } else { (mi / ((ha + hb) / 2.0)).clamp(0.0, 1.0) }
}

/// Clustering accuracy: the fraction of points whose cluster, mapped one-to-one to a class by
/// the best matching (Hungarian algorithm), is their class.
pub fn cluster_accuracy(clusters: &[usize], classes: &[usize]) -> f64 {
    let t = contingency(clusters, classes);
    let size = t.len().max(t.first().map_or(0, Vec::len));
    let weights = pathfinding::matrix::Matrix::from_fn(size, size, |(i, j)| {
        t.get(i).and_then(|r| r.get(j)).copied().unwrap_or(0) as i64
    });
    let (matched, _) = pathfinding::kuhn_munkres::kuhn_munkres(&weights);
    matched as f64 / clusters.len() as f64
}

/// Area under the ROC curve of `scores` for telling the `positive` points from the others
/// (higher score = more anomalous): the probability that a random positive outscores a random
/// negative, ties counting one half.
pub fn auroc(scores: &[f64], positive: &[bool]) -> f64 {
    assert_eq!(scores.len(), positive.len());
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&i, &j| scores[i].total_cmp(&scores[j]));
    // Average ranks (1-based) over ties, then the Mann–Whitney U statistic.
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    let np = positive.iter().filter(|&&p| p).count() as f64;
    let nn = positive.len() as f64 - np;
    let rank_sum: f64 = ranks.iter().zip(positive).filter(|(_, p)| **p).map(|(r, _)| r).sum();
    (rank_sum - np * (np + 1.0) / 2.0) / (np * nn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nmi_and_accuracy() {
        let truth = [0, 0, 0, 1, 1, 1, 2, 2, 2];
        let renamed = [2, 2, 2, 0, 0, 0, 1, 1, 1];
        assert!((nmi(&truth, &renamed) - 1.0).abs() < 1e-12);
        assert_eq!(cluster_accuracy(&renamed, &truth), 1.0);
        let one_wrong = [2, 2, 0, 0, 0, 0, 1, 1, 1];
        assert!((cluster_accuracy(&one_wrong, &truth) - 8.0 / 9.0).abs() < 1e-12);
        let n = nmi(&one_wrong, &truth);
        assert!(n > 0.6 && n < 1.0, "{n}");
        // Independent labelings: zero.
        assert!(nmi(&[0, 1, 0, 1], &[0, 0, 1, 1]).abs() < 1e-12);
        // More clusters than classes.
        assert_eq!(cluster_accuracy(&[0, 1, 2, 3], &[0, 0, 1, 1]), 0.5);
    }

    #[test]
    fn auroc_counts_ties_as_halves() {
        assert_eq!(auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), 1.0);
        assert_eq!(auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), 0.0);
        assert_eq!(auroc(&[0.5, 0.5, 0.5, 0.5], &[false, true, false, true]), 0.5);
        assert_eq!(auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), 0.75);
    }

    #[test]
    fn kmeans_finds_separated_groups() {
        let mut points = Vec::new();
        let mut truth = Vec::new();
        for c in 0..3 {
            for i in 0..20 {
                let jitter = (i as f32 * 0.37).sin() * 0.3;
                points.push(vec![c as f32 * 10.0 + jitter, -(c as f32) * 5.0 + jitter * 0.5]);
                truth.push(c);
            }
        }
        let clusters = kmeans(&points, 3, 4).unwrap();
        assert_eq!(cluster_accuracy(&clusters, &truth), 1.0);
        assert!(kmeans(&points[..2], 3, 1).is_err());
    }
}
